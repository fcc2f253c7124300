"""
Stick tables: learned key -> backend bindings (L{IStickTable}).
"""
