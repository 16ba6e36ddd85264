"""Content filters on the SMTP listeners: milters (the milter protocol, kartero/milter) and the Python
hooks (kartero/hooks.py), chained in the order of the config, and the changes they ask for applied to a
message before intake stores it."""
