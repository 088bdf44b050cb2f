"""The harness every script in ``examples/`` shares (not part of the installed ``commcomp``).

* :mod:`common.runtime`: ``--comm-hook``/``--seed``/``--out-dir``/``--device`` flags, process group
  set-up under torchrun, DDP wrapping with a commcomp hook, rank-0 progress bars, JSON result files,
  headless matplotlib and PNG figures.
* :mod:`common.data`: datasets bundled in Python packages (scikit-learn digits, mnist1d).
* :mod:`common.models`: small CNNs, MLPs and linear networks for them.
* :mod:`common.training`: the distributed train/eval loop.

Scripts run as ``torchrun examples/x.py``, so ``examples/`` is ``sys.path[0]`` and they import
``common.*`` and ``recipes.*`` directly; ``tests/conftest.py`` and ``benchmarks/_common.py`` put
``examples/`` on ``sys.path`` the same way.
"""
