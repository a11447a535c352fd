"""``xds-portal``: the clinicians' web portal over the region's registries, repositories and imaging sources."""
