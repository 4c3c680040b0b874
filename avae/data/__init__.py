"""Data: the data sets, their checksums and loading (datasets), where raw files come from (sources),
and your own arrays and image folders (userdata)."""
