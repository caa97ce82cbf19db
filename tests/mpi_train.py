"""``python -m tinymlm.train`` for tests/test_distributed.py to start under ``mpiexec``.

    mpiexec -n 2 python tests/mpi_train.py [train options]

The same command line, with two test hooks:
- the fact probes after the last step (480 fill-masks, MLM on tinyworld) are skipped, as in
  tests/test_train_resume.py: they are not under test and would take most of a short run;
- ``TINYMLM_TEST_FAIL=RANK:STEP:kill|stop``: rank RANK sends itself SIGKILL (it dies) or
  SIGSTOP (it hangs) when it builds the batch of step STEP.
"""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tinymlm import distributed, train  # noqa: E402
from tinymlm.objectives import pretraining  # noqa: E402

pretraining.knowledge_report = lambda *args: {"fact_accuracy": 0.0}

if os.environ.get("TINYMLM_TEST_FAIL"):
    rank, step, how = os.environ["TINYMLM_TEST_FAIL"].split(":")
    batch = pretraining.MaskedLanguageModeling.batch

    def failing_batch(self, at, micro):
        if distributed.launched_rank() == int(rank) and at == int(step):
            os.kill(os.getpid(), signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        return batch(self, at, micro)

    pretraining.MaskedLanguageModeling.batch = failing_batch

sys.exit(train.main())
