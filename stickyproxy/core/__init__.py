"""
The core: the router, pools, balancers, and how backends are reached.
"""
