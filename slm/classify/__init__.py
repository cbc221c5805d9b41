"""Text classifiers behind one predict interface (see base.py)."""
