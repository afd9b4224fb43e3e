"""What goes in: reading, checking, splitting and transforming endoscopy images, masks and labels."""
