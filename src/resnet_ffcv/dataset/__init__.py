"""The ``.ffcv`` dataset files: their format and checks (``format``), the sources they are written from
(``sources``: ImageFolder trees, Hugging Face data on disk), the writer (``writer``, with ``ffcv_io`` running FFCV's
writer in worker processes), the demo's synthetic images and ``inspect-dataset``.

Importable without Lightning or torch: ``write-dataset`` runs on a CPU box that has neither.
"""
