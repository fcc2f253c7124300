"""
L4: TCP connections spliced to the backend the router picks.
"""
