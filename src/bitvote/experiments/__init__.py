"""The seed's experiments, built on :mod:`bitvote.train`: each is one resumable protocol.

- :mod:`.reproduce`: the results table (baseline, converted, BN-recalibrated and retrained
  rows per voter), staged under one folder (``bitvote reproduce``);
- :mod:`.report`: what a reproduction writes (``table.md``, ``results.json``, ``accuracy.png``);
- :mod:`.appendix`: the 4 models x 3 normalization forms grid (``bitvote reproduce --table
  appendix``);
- :mod:`.demo`: the README's main job, the ``demo`` preset with its table (``bitvote demo``).

Training knows nothing of these: the dependency runs experiments -> train only.
"""
