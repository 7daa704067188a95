"""`python -m hrnet_sweep.synth ...`: the same as `hrnet_sweep synth ...`."""

import sys

from ..cli import main

sys.exit(main(["synth", *sys.argv[1:]]))
