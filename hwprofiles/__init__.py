"""Built-in hardware profiles (YAML package data)."""
