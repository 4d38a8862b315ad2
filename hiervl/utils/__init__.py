"""Small helpers shared across HierVL (tests, tools)."""
