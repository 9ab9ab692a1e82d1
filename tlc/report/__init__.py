"""Report: what it reads, the figures and the pages."""
