"""Network stage: a hardened async HTTP downloader (see ``echoimage.fetch.client``)."""
