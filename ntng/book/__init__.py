"""The book wing: reading run records, statistics, verdicts, `ntng compare`'s verdict, figures, building the book."""
