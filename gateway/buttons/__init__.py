"""Emergency buttons: device register, receivers (serial -> codec -> events), alarm lifecycle."""
