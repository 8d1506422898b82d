"""Domain objects, the key/value codec and validation, error kinds.

This layer imports nothing else of overcast's.
"""
