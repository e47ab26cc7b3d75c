"""Adapter methods: one module per method, mapped by name in `registry`."""
