"""Paper recipes: the reusable pieces of each ``examples/*.py`` reproduction, one module per paper.

* :mod:`recipes.attacks`: norm balls and PGD in L-inf, L2 and Fourier-L-inf (``fourier_linf.py``, ``soar.py``).
* :mod:`recipes.fourier`: optimization bias of linear models and linear networks (``fourier_linf.py``).
* :mod:`recipes.soar`: the second-order adversarial regularizer (``soar.py``).
* :mod:`recipes.contrastive`: global-batch contrastive losses and retrieval metrics (``vsepp.py``, ``ape.py``).
* :mod:`recipes.text`: digit captions and their cached sentence embeddings (``vsepp.py``, ``ape.py``).
* :mod:`recipes.ape`: APE heads on frozen encoders, zero-shot evaluation (``ape.py``).
* :mod:`recipes.rangeaugment`: augmentation with learned magnitude ranges (``rangeaugment.py``).
"""
