"""The notebooks' side: the session banner, the install cell, one call per notebook step, runs, widgets."""
