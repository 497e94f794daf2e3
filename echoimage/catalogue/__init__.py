"""Where a catalogue's images come from: `sources` (catalogue files, folders, URL lists →
CatalogueItems), `reader` (a source as a build or an update reads it, remote catalogue
files fetched), `scrape` (web pages → an images.json) and `sample` (the bundled sample
catalogue)."""
