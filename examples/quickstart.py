import batchery


class Shout(batchery.Model):
    max_batch_size = 16
    max_delay_ms = 2

    def setup(self, device):
        self.suffix = "!"

    def predict(self, batch):
        return [text.upper() + self.suffix for text in batch]


if __name__ == "__main__":
    batchery.serve(Shout(), port=8000)
