"""A domain of your own: the wallet of docs/domains.md (``wallet.py``), and a script that uses it (``__main__.py``)."""
