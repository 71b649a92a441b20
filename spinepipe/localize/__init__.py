"""Level localization: which slice of each series, and where in it, for every level and side."""
