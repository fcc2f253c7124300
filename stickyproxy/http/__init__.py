"""
L7: HTTP/1.1 requests routed one by one, and the keep-alive connections
to backends.  Protocols know contexts and the router, never a strategy.
"""
