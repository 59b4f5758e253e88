import os

import torch

# Small tensors: one thread avoids OpenMP oversubscription on 2-core CI machines.
torch.set_num_threads(int(os.environ.get("CMLITE_TEST_THREADS", "1")))
