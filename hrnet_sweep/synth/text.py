"""What a receipt says: store header, item table, totals, footer, as lines of aligned
segments (positions are fractions of the printable width, not pixels yet)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORDS_PER_IMAGE = (15, 80)
"""Range of the target word count per image (drawn uniformly), so folds can stratify."""

_EN = {
    "stores": ("FRESH MART", "CORNER CAFE", "BLUE HARBOR COFFEE", "GREEN LEAF GROCER", "CITY PHARMACY",
               "SUNNY BAKERY", "QUICK STOP", "PIZZA HOUSE", "THE BOOK NOOK", "DAILY DELI", "MAPLE DINER"),
    "addr": ("Main St", "Oak Ave", "Park Rd", "Market St", "River Blvd", "Station Rd"),
    "city": ("Springfield, IL", "Riverside, CA", "Fairview, TX", "Lakewood, NJ", "Portland, OR"),
    "items": ("Americano", "Cafe Latte", "Bagel", "Orange Juice", "Milk 1L", "Eggs 12pk", "Banana",
              "Green Tea", "Club Sandwich", "Cheese Cake", "Water 500ml", "Potato Chips", "Chocolate Bar",
              "Shampoo", "Toothpaste", "Notebook A5", "Black Pen", "Red Apple", "Instant Ramen", "Croissant",
              "Iced Tea", "Vanilla Ice Cream", "Paper Towels", "Dish Soap", "Greek Yogurt", "Wheat Bread"),
    "cols": ("ITEM", "PRICE", "QTY", "AMOUNT"), "sub": "Subtotal", "tax": "Tax 10%", "total": "TOTAL",
    "cash": "Cash", "change": "Change", "card": "VISA ****", "appr": "Approval No.",
    "thanks": ("Thank you!", "Please come again", "Have a nice day!"),
    "staff": "Cashier:", "names": ("Kim", "Lee", "Maria", "John", "Alex"), "tel": "Tel.",
    "web": ("www.freshmart.com", "www.dailydeli.net", "shop.example.org"),
}  # fmt: skip
_KO = {
    "stores": ("행복마트", "스타 커피", "우리동네 약국", "김밥천국 강남점", "하늘 베이커리", "세븐 편의점",
               "바다 횟집", "한솔 문구"),
    "addr": ("서울특별시 강남구 테헤란로", "부산광역시 해운대구 해운대로", "경기도 성남시 분당구 판교역로",
             "서울시 마포구 월드컵로"),
    "items": ("아메리카노", "카페라떼", "삼각김밥", "생수 500ml", "컵라면", "바나나우유", "초코파이", "새우깡",
              "치즈케이크", "녹차", "두부 1모", "계란 10구", "김치찌개", "된장찌개", "비빔밥", "떡볶이",
              "오렌지 주스", "샴푸", "치약", "볼펜 검정", "공책", "사과 1kg", "우유 1L", "식빵"),
    "cols": ("품명", "단가", "수량", "금액"), "sub": "과세물품가액", "tax": "부가세", "total": "합계",
    "cash": "현금", "change": "거스름돈", "card": "신용카드 ****", "appr": "승인번호",
    "thanks": ("감사합니다", "또 방문해 주세요", "좋은 하루 되세요"),
    "staff": "대표자:", "names": ("홍길동", "김철수", "이영희", "박민수"), "tel": "전화", "biz": "사업자번호",
}  # fmt: skip


@dataclass
class Seg:
    """Words that stay together on a line, anchored at `x` (fraction of the width)."""

    text: str
    x: float
    align: str  # "l", "c" or "r": which end of the segment sits at `x`


@dataclass
class Line:
    segs: list[Seg] = field(default_factory=list)
    scale: float = 1.0  # type size relative to the receipt's base size
    bold: bool = False
    kind: str = "text"  # text | rule | barcode; rules and barcodes are ink but not words
    item: int = 0  # the k-th item's lines carry k; the last items go first when a receipt does not fit

    @property
    def words(self) -> int:
        return sum(len(s.text.split()) for s in self.segs)


def _t(*segs: tuple, **kw) -> Line:
    return Line([Seg(*s) for s in segs], **kw)


class _Writer:
    """One receipt's vocabulary, currency and rule style, and the draws from its generator.

    Every random choice of a receipt goes through here, in the order the parts are written
    (header, item table, items, tail): that order is what a seed means, so a change to it
    changes every synthetic dataset.
    """

    def __init__(self, rng: np.random.Generator, ko: bool):
        self.rng = rng
        self.ko = ko
        self.v = _KO if ko else _EN
        self.won = ko or rng.random() < 0.5  # Korean always in won (no draw), English half the time
        self.rule_style = self.pick(("-", "=", "solid", "dots"))

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def num(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi))

    def money(self, cents: int, sign: bool = False) -> str:
        if self.won:
            return f"{cents * 10:,}" + ("원" if self.ko and sign else "")
        return ("$" if sign else "") + f"{cents / 100:.2f}"

    def rule(self) -> Line:
        return Line([Seg(self.rule_style, 0, "l")], kind="rule")


def receipt_lines(rng: np.random.Generator, ko: bool, target: int) -> list[Line]:
    """A receipt's lines, about `target` words in all: the more words, the more optional
    header and footer lines; items fill up the rest."""
    p = float(np.clip((target - WORDS_PER_IMAGE[0]) / 65, 0.1, 0.95))
    w = _Writer(rng, ko)
    head = _header(w, p)
    style = w.pick(("3col", "4col", "2line"))  # item table layout, one per receipt
    head += _table_head(w, style)
    words = sum(line.words for line in head) + 8 + int(4 * p)  # + about what the tail adds
    items, total = _items(w, style, target - words)
    return head + items + _tail(w, p, total)


def _header(w: _Writer, p: float) -> list[Line]:
    """Store name, with probability `p` each its address and phone, the date, and with
    probability `p` the cashier."""
    v, num = w.v, w.num
    head = [_t((w.pick(v["stores"]), 0.5, "c"), scale=float(w.rng.uniform(1.3, 1.8)), bold=True)]
    if w.rng.random() < p:
        if w.ko:
            head.append(_t((f"{w.pick(v['addr'])} {num(1, 400)}", 0.5, "c")))
            head.append(_t((f"{v['biz']} {num(100, 999)}-{num(10, 99)}-{num(10000, 99999)}", 0.5, "c")))
        else:
            head.append(_t((f"{num(1, 9999)} {w.pick(v['addr'])}", 0.5, "c")))
            head.append(_t((w.pick(v["city"]), 0.5, "c")))
    if w.rng.random() < p:
        head.append(_t((f"{v['tel']} 0{num(2, 70)}-{num(100, 9999)}-{num(1000, 9999):04d}", 0.5, "c")))
    head.append(w.rule())
    stamp = f"{num(2019, 2025)}-{num(1, 13):02d}-{num(1, 29):02d} {num(8, 23):02d}:{num(0, 60):02d}"
    head.append(_t((stamp, 0, "l"), (f"#{num(1, 9999):04d}", 1, "r")))
    if w.rng.random() < p:
        head.append(_t((f"{v['staff']} {w.pick(v['names'])}", 0, "l"), (f"POS {num(1, 20):02d}", 1, "r")))
    return head


def _table_head(w: _Writer, style: str) -> list[Line]:
    """The item table's column titles (mostly; never over two-line items) between rules."""
    lines = []
    if style != "2line" and w.rng.random() < 0.8:
        name, unit, qty, amount = w.v["cols"]
        cols = [(unit, 0.58, "r"), (qty, 0.72, "c")] if style == "4col" else [(qty, 0.66, "c")]
        lines += [w.rule(), _t((name, 0, "l"), *cols, (amount, 1, "r"))]
    lines.append(w.rule())
    return lines


def _items(w: _Writer, style: str, room: int) -> tuple[list[Line], int]:
    """Items until they hold `room` words (at least one item); the lines and the total."""
    total, items, k, words = 0, [], 0, 0
    while words < room or not items:
        name, qty, unit = w.pick(w.v["items"]), w.num(1, 5), w.num(50, 9000)
        unit = unit // 10 * 10 if w.won else unit  # won prices in hundreds
        total, k = total + qty * unit, k + 1
        new = _item_lines(w, style, k, name, qty, unit)
        items += new
        words += sum(line.words for line in new)
    return items, total


def _item_lines(w: _Writer, style: str, k: int, name: str, qty: int, unit: int) -> list[Line]:
    money = w.money
    if style == "2line":
        return [_t((name, 0, "l"), item=k),
                _t((f"{qty} x {money(unit)}", 0.06, "l"), (money(qty * unit), 1, "r"), item=k)]  # fmt: skip
    if style == "4col":
        return [_t((name, 0, "l"), (money(unit), 0.58, "r"), (str(qty), 0.72, "c"), (money(qty * unit), 1, "r"),
                   item=k)]  # fmt: skip
    return [_t((name, 0, "l"), (str(qty), 0.66, "c"), (money(qty * unit), 1, "r"), item=k)]


def _tail(w: _Writer, p: float, total: int) -> list[Line]:
    """Subtotal and tax (probability `p`), the total, cash or card, thanks, and maybe a
    barcode and (English) a web address."""
    v, num, money = w.v, w.num, w.money
    tail = [w.rule()]
    if w.rng.random() < p:
        net = total * 10 // 11
        tail += [_t((v["sub"], 0, "l"), (money(net), 1, "r")), _t((v["tax"], 0, "l"), (money(total - net), 1, "r"))]
    big = float(w.rng.uniform(1.1, 1.4))
    tail.append(_t((v["total"], 0, "l"), (money(total, sign=True), 1, "r"), scale=big, bold=True))
    if w.rng.random() < 0.5:
        paid = total + num(0, 5) * (1000 if w.won else 100)
        tail += [_t((v["cash"], 0, "l"), (money(paid), 1, "r"))]
        tail += [_t((v["change"], 0, "l"), (money(paid - total), 1, "r"))]
    else:
        tail.append(_t((f"{v['card']}{num(1000, 9999)}", 0, "l"), (money(total), 1, "r")))
        if w.rng.random() < p:
            tail.append(_t((f"{v['appr']} {num(10**7, 10**8)}", 0, "l")))
    tail += [w.rule(), _t((w.pick(v["thanks"]), 0.5, "c"))]
    if w.rng.random() < p * 0.7:
        tail.append(Line(kind="barcode"))
    if not w.ko and w.rng.random() < p * 0.5:
        tail.append(_t((w.pick(v["web"]), 0.5, "c")))
    return tail
