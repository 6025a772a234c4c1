"""The built-in domains, written on the public API (``seqproc.Domain``) like any user's:

- :mod:`.likes`: likes on articles (``like``, ``unlike``), the count following the rows, the last action winning;
- :mod:`.stock`: stock of products (``restock``, ``reserve``, ``release``, ``commit``), never oversold;
- :mod:`.balance`: account balances (``balance.deposit``, ``.withdraw``, ``.transfer_out``, ``.transfer_in``), never
  below zero.
"""

# In this order: the event types are listed in it (in error messages, in `seqproc enqueue --help`).
from seqproc.domains import likes, stock, balance  # noqa: I001

__all__ = ["balance", "likes", "stock"]
