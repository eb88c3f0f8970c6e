"""avatar: a real-time conversational digital human."""

import os

# Before numpy loads: its OpenBLAS keeps a thread per core that spins (sched_yield) after every matrix
# product. In a 4-client soak one such thread took 99.9% of a core (6 CPU-minutes in 11 minutes) on a
# 2-core machine, beside the models' own thread pools; our matrices (Smart Turn's mel filters) are small.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
