"""Every use of tinygrad's private internals, each checked against the tinygrad version it was written for, and the
choice of device."""
