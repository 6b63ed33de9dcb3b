"""``python -m csa_rerank``: the ``csa-rerank`` command (:mod:`csa_rerank.cli`) without installing its script."""

import sys

from csa_rerank.cli import main

sys.exit(main())
