"""
End-to-end tests: the real C{twistd -n stickyproxy} process, on 127.0.0.1,
in front of real backend processes, driven by real client sockets.

They need nothing but the repository and its test dependencies; helpers
live in L{tests.e2e._harness} and the backend in L{tests.e2e.tcp_backend}.
"""
