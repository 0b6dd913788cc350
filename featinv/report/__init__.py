"""What people look at: figures, tables and the offline HTML report."""
