"""The click commands, one module per stage; ``skinfeat.cli`` assembles them."""
