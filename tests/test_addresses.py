"""
Tests for L{stickyproxy.core._addresses}: host strings as IP addresses.
"""

import ipaddress

from stickyproxy.core._addresses import client_ip, in_networks, ip_address

from tests._base import TestCase


class IPAddressTests(TestCase):
    def test_ip_address(self):
        """
        IPv4 and IPv6 literals are addresses (an IPv6 zone dropped, an
        IPv4-mapped one kept as it is); host names and socket paths are not.
        """
        for host, expected in [
            ("10.0.0.1", "10.0.0.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),
        ]:
            self.assertEqual(ip_address(host), ipaddress.ip_address(expected), host)
        for host in ("app.example", "/run/x.sock", "", "10.0.0.256"):
            self.assertIsNone(ip_address(host), host)

    def test_client_ip(self):
        """
        An IPv4 client of a dual-stack listener counts as its IPv4 address.
        """
        self.assertEqual(client_ip("::ffff:10.0.0.1"), ipaddress.ip_address("10.0.0.1"))
        self.assertEqual(client_ip("fe80::1%2"), ipaddress.ip_address("fe80::1"))
        self.assertIsNone(client_ip("app.example"))

    def test_in_networks(self):
        """
        Whether a host is in a set of networks follows L{client_ip}.
        """
        networks = (ipaddress.ip_network("10.0.0.0/8"),)
        self.assertTrue(in_networks("::ffff:10.1.2.3", networks))
        self.assertFalse(in_networks("11.0.0.1", networks))
        self.assertFalse(in_networks("app.example", networks))
        self.assertFalse(in_networks("10.0.0.1", ()))
