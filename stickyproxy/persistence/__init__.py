"""
Persistence: the strategy registry, one module per built-in strategy,
signing, and stick tables.
"""
