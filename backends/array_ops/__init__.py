"""Array-backend (NumPy/CuPy) rules of plan op kinds beyond the EiNet core, one module per kind,
plus the einsum executor every kind shares (``contract``). ``backends.array_backend`` keys its
rule tables (forward, backward, backtrack) by op type."""
