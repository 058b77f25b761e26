"""Shadow retrieval evaluation assets: each candidate space against the active one, per source."""
