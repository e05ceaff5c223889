"""What gateway/ and drivers/ both use: the error tree, back-off, small asyncio helpers.

Nothing here imports from gateway/ or drivers/, so every arrow points into this package.
"""
