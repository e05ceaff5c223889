"""What gateway/ and drivers/ both use: the error tree, back-off, small asyncio helpers and
the declaration of CLI commands (a summary and an example each).

Nothing here imports from gateway/ or drivers/, so every arrow points into this package.
"""
