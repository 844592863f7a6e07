"""Test code the product never imports: the Kite REST and ticker test servers, chaos drills, the soak, the
demo, MockDataGenerator, benchmark baselines and the bench report. The CLI's drill verbs import it inside the verb."""
