"""Monthly drops: the data contract, reading and checking a drop, loading it, and the generator."""
