"""The fleet: which agents are known and connected (`registry`), how an agent gets its certificate
(`enrollment`), and the central agent config pushed to each agent (`config`)."""
