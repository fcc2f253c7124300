"""
Configuration: TOML tables read into frozen settings values.

Nothing here imports a protocol: loading a config loads no frontend.
"""
