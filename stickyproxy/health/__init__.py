"""
Health: probes, the rise/fall tracking of their results, and the monitor
service that runs them.
"""
