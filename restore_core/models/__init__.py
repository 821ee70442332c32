"""Model families behind one seam: each module loads one kind of network through its library's real loader."""
