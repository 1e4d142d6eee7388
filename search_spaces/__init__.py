"""Search spaces, one module per kernel: parameters and their values, constraints with reasons, and the default
config a user gets without a table. Plain data and small functions, meant to be read and edited."""
