"""Reading and writing data: data files and arrays checked against a circuit (``data``), atomic
writes and output checks (``files``), pictures (``images``)."""
