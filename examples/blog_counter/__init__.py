"""A domain whose ``save`` writes a column of the application's own table (see README.md beside this file)."""
