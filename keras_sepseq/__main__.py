"""`python -m keras_sepseq` runs the `keras-sepseq` command line."""

import sys

from keras_sepseq.cli import main

sys.exit(main())
