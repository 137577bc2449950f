"""Administration: the admin API, the admin web page, and how admins are authenticated."""
